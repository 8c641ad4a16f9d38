"""python -m sw.onnx import MODEL.onnx --out model.bnn [--board B | --config FILE] [--input-range LO,HI]
                        [--input-shape C,H,W]
python -m sw.onnx export model.bnn --out model.onnx [--input-range LO,HI] [--batch N]

`import` streamlines a QONNX binary network (Brevitas' export_qonnx) into a .bnn
model that sw.compile takes; `export` writes any .bnn model as QONNX (docs/onnx.md).
"""

import sys

from hw.cli import OneLineParser

PROG = "python -m sw.onnx"


def parser():
    p = OneLineParser(prog=PROG, description="Import QONNX binary networks as .bnn models; export .bnn models "
                                             "as QONNX.")
    commands = p.add_subparsers(dest="command", required=True, metavar="{import,export}")
    imp = commands.add_parser("import", help="a QONNX binary network -> a .bnn model",
                              description="Streamline a QONNX binary network into a .bnn model.")
    imp.error = lambda message: imp.exit(2, f"{PROG} import: error: {message}\n")
    imp.add_argument("model", help="the .onnx file (a weights .data file beside it is read too)")
    imp.add_argument("--out", required=True, help="the .bnn model to write")
    target = imp.add_mutually_exclusive_group()
    target.add_argument("--board", help="import for this board's default AccelConfig")
    target.add_argument("--config", help="AccelConfig JSON file (default: AccelConfig())")
    imp.add_argument("--input-range", default="0,1", metavar="LO,HI",
                     help="pixel 0 is LO at the model input, pixel 255 is HI, linearly (default 0,1: "
                          "torchvision's ToTensor; write --input-range=-1,1 when LO is negative)")
    imp.add_argument("--input-shape", metavar="C,H,W",
                     help="the image shape for a model whose input is flat, (N, K) or (N, H, W): 1,28,28 for "
                          "MNIST (default 1,1,K or 1,H,W)")
    exp = commands.add_parser("export", help="a .bnn model -> QONNX",
                              description="Write a .bnn model as a QONNX graph.")
    exp.error = lambda message: exp.exit(2, f"{PROG} export: error: {message}\n")
    exp.add_argument("model", help="the .bnn model file")
    exp.add_argument("--out", required=True, help="the .onnx file to write")
    exp.add_argument("--input-range", default="0,1", metavar="LO,HI",
                     help="the graph's input for pixel 0 and 255 (default 0,1)")
    exp.add_argument("--batch", type=int, default=1, help="images per run of the graph (default 1)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    from hw.config import AccelConfig, ConfigError
    from sw.model_format import ModelFormatError, load_model, save_model
    from sw.onnx import OnnxError, export_onnx, import_onnx, parse_input_range, parse_input_shape

    def fail(message):
        sys.stderr.write(f"{PROG} {args.command}: error: {message}\n")
        return 1

    try:
        input_range = parse_input_range(args.input_range)
        if args.command == "import":
            if args.board:
                from sw.compile.__main__ import BoardError, board_config
                try:
                    config = board_config(args.board)
                except BoardError as error:
                    return fail(str(error))
            else:
                config = AccelConfig.load(args.config) if args.config else AccelConfig()
            shape = parse_input_shape(args.input_shape) if args.input_shape else None
            model = import_onnx(args.model, config, input_range, shape)
            save_model(args.out, model)
            kinds = ", ".join(layer["kind"] for layer in model.layers)
            print(f"{len(model.layers)} layers ({kinds}), input {model.input_shape}, {model.classes} classes")
            approximate = model.training.get("approximate_scales")
            if approximate:
                print(f"scales rounded (not exact ratios) in: {'; '.join(approximate)}")
            offset = model.training["logit_offset"]
            print(f"logits: real = {model.logit_unit:.6g} * integer {'-' if offset < 0 else '+'} {abs(offset):.6g}")
        else:
            model = load_model(args.model)
            export_onnx(model, args.out, input_range, args.batch)
            print(f"{len(model.layers)} layers exported")
    except (ConfigError, ModelFormatError, OnnxError) as error:
        return fail(str(error))
    except OSError as error:
        return fail(f"Cannot write {args.out}: {error.strerror or error}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
