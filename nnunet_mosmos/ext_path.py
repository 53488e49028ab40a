"""``mosmos-ext-path``: print the value to export as ``nnUNet_extTrainer``.

Usage::

    export nnUNet_extTrainer=$(mosmos-ext-path)

An existing value is kept and our shim folder is appended (``os.pathsep``-separated), so other
plugins' trainer folders keep working. ``--dir`` prints only our folder.
"""
import argparse
import os

from nnunet_mosmos import EXT_DIR, ext_trainer_value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="mosmos-ext-path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", action="store_true",
                        help="print only the MOSMOS shim folder, not the merged variable value")
    args = parser.parse_args(argv)
    print(EXT_DIR if args.dir else ext_trainer_value(os.environ.get("nnUNet_extTrainer")))


if __name__ == "__main__":
    main()
