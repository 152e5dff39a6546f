"""``python -m ckpt``: the same command line as the ``ckpt`` script."""

from __future__ import annotations


def _main() -> None:
    from ckpt_cli.main import main

    main()


if __name__ == "__main__":
    _main()
