"""The deployment commands of `metadg`: import, convert, export, register (parsers and what they run)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS = ("import", "convert", "export", "register")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the deployment sub-commands to the `metadg` parser."""
    imp = sub.add_parser("import", help="turn a published checkpoint of another code base into a metadg run folder")
    imp.add_argument("kind", choices=["aasist", "rawnet2", "ssl-aasist"],
                     help="aasist: clovaai/aasist AASIST.pth / AASIST-L.pth; rawnet2: its RawNet2Spoof (baseline conf); "
                          "ssl-aasist: SSL_Anti-spoofing's W2V2-AASIST (LA_model.pth, Best_LA_model_for_DF.pth)")
    imp.add_argument("checkpoint", help="the published file (a plain state dict, loaded with weights_only=True)")
    imp.add_argument("out", help="run folder to create (must not exist or be empty)")
    imp.add_argument("--preset", default="AASIST", choices=["AASIST", "AASIST-L"], help="aasist: the model the file holds")
    imp.add_argument("--backbone", metavar="XLSR_DIR",
                     help="ssl-aasist: a Hugging Face folder of the XLS-R it was trained from (its config is used; "
                          "`metadg convert fairseq-wav2vec2` makes one from xlsr2_300m.pt)")
    conv = sub.add_parser("convert", help="turn a fairseq wav2vec 2.0 / XLS-R checkpoint into a Hugging Face folder")
    conv.add_argument("kind", choices=["fairseq-wav2vec2"])
    conv.add_argument("checkpoint", help="e.g. xlsr2_300m.pt (a pickle: read with weights_only and an allow-list)")
    conv.add_argument("out", help="folder to write (config.json, model.safetensors, conversion.json)")
    conv.add_argument("--trust-checkpoint", action="store_true",
                      help="read the pickle (only tensors, containers and a short allow-list of classes are accepted)")
    exp = sub.add_parser("export", help="export a trained run (LoRA merged) for deployment")
    exp.add_argument("run", help="run folder (or its checkpoints/best)")
    exp.add_argument("out", help="file to write, e.g. detector.onnx")
    exp.add_argument("--format", default="onnx", choices=["onnx"])
    exp.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's stated one)")
    reg = sub.add_parser("register", help="register a run's detector (an MLflow pyfunc model) in the Model Registry")
    reg.add_argument("run", help="run folder (or its checkpoints/best)")
    reg.add_argument("--name", required=True, help="registered model name")
    reg.add_argument("--alias", help="alias to point at the new version, e.g. champion")
    reg.add_argument("--uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the run's tracking.uri)")


def run(args: argparse.Namespace) -> int:
    """Run the deployment command `args.command`."""
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "import": _import, "convert": _convert, "export": _export, "register": _register}
    return handlers[args.command](args)


def _import(args: argparse.Namespace) -> int:
    from metadg.config import ConfigError

    if args.kind == "aasist":
        from metadg.importers.aasist import import_aasist

        out, what = import_aasist(args.checkpoint, args.out, args.preset), args.preset
    elif args.kind == "rawnet2":
        from metadg.importers.rawnet2 import import_rawnet2

        out, what = import_rawnet2(args.checkpoint, args.out), "RawNet2"
    else:
        from metadg.importers.ssl_aasist import import_ssl_aasist

        if not args.backbone:
            raise ConfigError("--backbone: import ssl-aasist needs the Hugging Face folder of the XLS-R it was trained "
                              "from (make one with `metadg convert fairseq-wav2vec2 xlsr2_300m.pt XLSR_DIR`)")
        out, what = import_ssl_aasist(args.checkpoint, args.out, backbone=args.backbone), "W2V2-AASIST"
    print(f"imported {args.checkpoint} as {what}: {out}\n"
          f"  evaluate: metadg eval {out} --sets SETS.yaml   score: metadg score {out} FILES...\n"
          f"  fine-tune: set `model: {{init_from: {out}, ...}}` (same backbone and head) in a run config")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from metadg.importers.fairseq_wav2vec2 import convert_fairseq_wav2vec2

    out = convert_fairseq_wav2vec2(args.checkpoint, args.out, trust_checkpoint=args.trust_checkpoint)
    print(f"converted {args.checkpoint}: {out} (every key mapped or dropped: {out / 'conversion.json'})\n"
          f"  use it: model: {{backbone: {{name: ssl, pretrained: {out}}}}}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from metadg.deploy.onnx_export import export_onnx

    options = {} if args.opset is None else {"opset": args.opset}
    out = export_onnx(args.run, args.out, **options)
    print(f"exported {args.run} (LoRA merged) to {out}; parity with PyTorch checked with onnxruntime")
    return 0


def _register(args: argparse.Namespace) -> int:
    from metadg.deploy.register import register

    version = register(args.run, args.name, alias=args.alias, tracking_uri=args.uri)
    where = f"models:/{args.name}@{args.alias}" if args.alias else f"models:/{args.name}/{version}"
    print(f"registered {args.run} as {args.name} version {version}: {where}\n"
          f"  serve: mlflow models serve -m {where} --env-manager local")
    return 0
