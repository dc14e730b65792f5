"""``fuseops eval``: top-1 and top-5 of a checkpoint over the val split.

    python -m fuseops eval --data DIR --weights runs/a/best.pth
    python -m fuseops eval --data DIR --model resnet18 --variant block --stride-mode pool \
        --weights block_resnet18.pth.tar
"""

from __future__ import annotations

import json

from fuseops.cli.train import add_data_options, add_model_options, block_options, one_line


def add_parser(sub) -> None:
    parser = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on the val split",
                            description=__doc__.split("\n\n")[0])
    add_data_options(parser)
    add_model_options(parser, required=False)
    parser.add_argument("--weights", required=True, metavar="CKPT",
                        help="a fuseops checkpoint (then --model may be left out) or any weights get_model loads")
    parser.add_argument("--batch-size", type=int, default=128, metavar="N", help="images per batch (default 128)")
    parser.add_argument("--json", metavar="FILE", help='also write {"top1": %%, "top5": %%, "images": n} to FILE')
    parser.set_defaults(func=run)


def run(args) -> int:
    from fuseops.cli import CliError
    from fuseops.training.data import DataError
    from fuseops.training.trainer import TrainError, evaluate_checkpoint

    try:
        result = evaluate_checkpoint(
            data=args.data, weights=args.weights, model=args.model, variant=args.variant,
            block_options=block_options(args), dataset=args.dataset, img_size=args.img_size,
            batch_size=args.batch_size, workers=args.workers, device=args.device, progress=not args.no_progress)
    except (DataError, TrainError, ValueError, TypeError, FileNotFoundError) as error:
        raise CliError(one_line(error)) from None
    print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  ({result['images']} images)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle)
            handle.write("\n")
    return 0
