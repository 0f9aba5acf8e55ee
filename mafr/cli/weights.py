"""``mafr convert`` and ``mafr download``: weights from outside into mafr's format."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._shared import _load_config, _Out, _sub, EXIT_OK


def _cmd_convert_pointmae(args: argparse.Namespace, out: _Out) -> int:
    from ..convert import convert_pointmae_checkpoint
    from ..extractors import default_pointmae_dir

    dst = Path(args.dst_dir) if args.dst_dir else default_pointmae_dir()
    convert_pointmae_checkpoint(args.src, dst)
    out.result(f"wrote the PointMAE encoder to {dst}", {"out_dir": dst})
    return EXIT_OK


def _cmd_download_pointmae(args: argparse.Namespace, out: _Out) -> int:
    from ..download import download_pointmae, pointmae_dir

    target = pointmae_dir(args.cache_dir)
    if (target / "model.safetensors").is_file():
        out.log(f"the converted Point-MAE encoder is already in {target}")
    else:
        out.log(f"downloading Point-MAE's pretrain.pth, checking its SHA-256 and converting it into {target}")
    path = download_pointmae(url=args.url, sha256=args.sha256, cache_dir=args.cache_dir, progress=not out.quiet)
    # The path is the last line, so scripts can take it with `tail -n 1`.
    out.result(str(path), {"path": path})
    return EXIT_OK


def _cmd_convert_reference(args: argparse.Namespace, out: _Out) -> int:
    from ..convert import convert_reference_checkpoints
    from ..detector import MAFRDetector

    config = _load_config(args, default_preset="reference") if args.config else None
    dst = Path(args.dst_dir)
    convert_reference_checkpoints(args.src_dir, dst, args.category, config=config, threshold=args.threshold, tag=args.tag)
    det = MAFRDetector.from_pretrained(str(dst))
    files = det.fit_info_.get("converted_from", [])
    note = "" if args.threshold is not None else " (none: nothing is flagged until you pass --threshold)"
    out.result(
        f"converted {', '.join(files)} -> {dst}; threshold {det.threshold_}{note}",
        {"out_dir": dst, "converted_from": files, "threshold": det.threshold_, "config": det.config.to_json_dict()},
    )
    return EXIT_OK


def add_convert(subs, common) -> None:
    """``mafr convert``'s arguments."""
    p = _sub(subs, "convert", "convert published PyTorch checkpoints",
             "Convert published .pth checkpoints to mafr's safetensors format (read with\n"
             "torch.load(weights_only=True): no arbitrary code runs).",
             "  mafr convert pointmae pointmae_pretrain.pth\n"
             "  mafr convert reference checkpoints/ detector_bagel --category bagel", [common])
    conv = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    q = _sub(conv, "pointmae", "Point-MAE's ShapeNet pre-training checkpoint (3D extractor)",
             "Convert Point-MAE's pretrain.pth (a.k.a. pointmae_pretrain.pth) to the 3D extractor's\n"
             "weights. Without DST_DIR they go where the paper preset looks for them\n"
             "($MAFR_POINTMAE_WEIGHTS, else ~/.cache/mafr/pointmae).",
             "  mafr convert pointmae pointmae_pretrain.pth\n"
             "  mafr convert pointmae pointmae_pretrain.pth weights/pointmae", [common])
    q.add_argument("src", metavar="SRC.pth", help="pretrain.pth from github.com/Pang-Yatian/Point-MAE")
    q.add_argument("dst_dir", metavar="DST_DIR", nargs="?", help="output folder (default: see above)")
    q.set_defaults(func=_cmd_convert_pointmae)
    q = _sub(conv, "reference", "the MAFR reference code's fusion autoencoder trio",
             "Turn the reference code's fusion_encoder_<C>_<E>ep_<B>bs.pth, decoder_2D_... and\n"
             "decoder_3D_... (in SRC_DIR or SRC_DIR/<C>) into a saved detector with the reference preset\n"
             "(point-wise CBAM) and identity feature normalisation, as the reference feeds raw features.\n"
             "The checkpoints carry no threshold: without --threshold nothing is flagged (threshold inf)\n"
             "until you set one, e.g. from the scores of known-good parts.",
             "  mafr convert reference checkpoints/ detector_bagel --category bagel --threshold 3.2", [common])
    q.add_argument("src_dir", metavar="SRC_DIR", help="folder with the three .pth files (or its <C> subfolder)")
    q.add_argument("dst_dir", metavar="DST_DIR", help="where the detector is saved")
    q.add_argument("--category", required=True, metavar="C", help="category name, as in the file names")
    q.add_argument("--config", metavar="CONFIG.json", help="detector config (default: MAFRConfig(preset='reference'))")
    q.add_argument("--threshold", type=float, metavar="T", help="decision threshold on the image score (default: none, inf)")
    q.add_argument("--tag", metavar="<E>ep_<B>bs", help="which training, when several of one category are present")
    q.set_defaults(func=_cmd_convert_reference, preset=None)


def add_download(subs, common) -> None:
    """``mafr download``'s arguments."""
    p = _sub(subs, "download", "fetch published extractor weights ahead of first use",
             "Fetch published weights now rather than on first use (air-gapped machines: run it where\n"
             "there is network and copy the folder; internal mirrors: --url).",
             "  mafr download pointmae\n"
             "  mafr download pointmae --url https://mirror.example/pretrain.pth --cache-dir /opt/mafr", [common])
    dl = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    q = _sub(dl, "pointmae", "Point-MAE's ShapeNet pre-training checkpoint (3D extractor of the paper preset)",
             "Download Point-MAE's pretrain.pth, check its SHA-256, convert it to safetensors and keep only\n"
             "the converted encoder, in CACHE/pointmae (CACHE: --cache-dir, else $MAFR_POINTMAE_WEIGHTS as\n"
             "the folder itself, else $MAFR_CACHE/pointmae, else ~/.cache/mafr/pointmae). A wrong hash or a\n"
             "failed download leaves nothing behind. Prints the converted folder as the last line.",
             "  mafr download pointmae\n"
             "  mafr download pointmae --url http://mirror.internal/pretrain.pth --cache-dir /opt/mafr", [common])
    q.add_argument("--url", metavar="URL", help="where to download pretrain.pth from (default: the Point-MAE GitHub release)")
    q.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of the file (default: the published checkpoint's)")
    q.add_argument("--cache-dir", metavar="DIR", help="cache folder; the encoder goes to DIR/pointmae")
    q.set_defaults(func=_cmd_download_pointmae)
