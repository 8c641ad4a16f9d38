"""python -m sw.compile model.bnn (--board NAME | --config FILE.json) --out prog.bundle

Compiles a .bnn model for one AccelConfig, verifies the program on the ISS against the model's
deploy forward pass, writes the program bundle and prints the per-layer cycle report.
"""

import sys
from hw.cli import OneLineParser

PROG = "python -m sw.compile"



def parser():
    p = OneLineParser(prog=PROG, description="Compile a .bnn model into a program bundle for the accelerator.")
    p.add_argument("model", help="the .bnn model file (python -m sw.train writes one)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--board", help="compile for this board's default AccelConfig (the boards registry)")
    target.add_argument("--config", help="AccelConfig JSON file (default: AccelConfig())")
    p.add_argument("--out", required=True, help="the program bundle to write")
    p.add_argument("--verify-images", type=int, default=2,
                   help="random images the ISS runs against deploy_forward after compiling (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the verification images")
    p.add_argument("--weights", choices=("auto", "resident", "stream"), default="auto",
                   help="resident: the host writes every layer's weights, scales and thresholds before start; "
                        "stream: LOAD instructions take them layer by layer from the load stream while the "
                        "previous layer computes; auto (default): resident when they fit")
    p.add_argument("--batch", type=int, default=1,
                   help="images a run takes, stacked so that layers with fewer output pixels than the array "
                        "has columns fill them (default 1; the array's columns are a good choice)")
    p.add_argument("--input", choices=("auto", "packed", "unfold"), default="auto",
                   help="how the first layer reads the image: packed, the host writes the image (one word a pixel) "
                        "and the first convolution gathers its receptive fields; unfold, the host unfolds the "
                        "image into them; auto (default): packed where the first layer allows it and pixel plane "
                        "groups are not faster (docs/compiler.md \"First layer\")")
    p.add_argument("--quiet", action="store_true", help="print only the output path")
    return p


class BoardError(ValueError):
    pass


def board_config(name):
    """The default AccelConfig of a board from the `boards` registry; BoardError names the boards."""
    import boards
    try:
        return boards.get_board(name).config
    except KeyError as error:
        raise BoardError(error.args[0]) from None


def _input_line(spec):
    """One line on how the first layer reads the image."""
    shape = "x".join(str(n) for n in spec["shape"])
    if spec["mode"] == "packed":
        return (f"input packed: the {shape} image map, one word a pixel ({spec['input_words']} words), read by "
                f"the first CONV")
    return (f"input unfolded by the host: {spec['input_words']} words for the {shape} image "
            f"({len(spec['groups'])} activation bases)")


def main(argv=None):
    args = parser().parse_args(argv)
    from hw.config import AccelConfig, ConfigError
    from sw.bundle import save_bundle
    from sw.compile import CompileError, compile_model
    from sw.iss import format_report, layer_report
    from sw.model_format import ModelFormatError, load_model

    def fail(message, status=1):
        sys.stderr.write(f"{PROG}: error: {message}\n")
        return status

    try:
        if args.board:
            config = board_config(args.board)
        elif args.config:
            config = AccelConfig.load(args.config)
        else:
            config = AccelConfig()
        model = load_model(args.model)
        passes = []
        bundle = compile_model(model, config, verify_images=max(0, args.verify_images), seed=args.seed,
                               progress=None if args.quiet else passes.append, weights=args.weights,
                               batch=args.batch, input=args.input)
        save_bundle(args.out, bundle)
    except (BoardError, ConfigError, ModelFormatError, CompileError) as error:
        return fail(str(error))
    except OSError as error:
        return fail(f"Cannot write {args.out}: {error.strerror or error}")
    if not args.quiet:
        print(f"passes: {', '.join(passes)}")
        for line in bundle.model.get("checked", []):
            print(f"checked: {line}")
        print(f"config {config.fingerprint()}: {config.rows}x{config.cols} array, W = {config.word_bits}, "
              f"{len(bundle.instructions)} instructions")
        print(_input_line(bundle.input))
        if bundle.stream:
            entries = sum(len(segment.values) for segment in bundle.stream)
            print(f"parameters streamed: {len(bundle.stream)} LOADs, {entries} entries per inference")
        else:
            print("parameters resident: written once before the first start")
        for line in format_report(layer_report(bundle)):
            print(line)
    print(f"bundle written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
