"""``python tests/crash_cli.py POINT ARGS...``: ``respkd ARGS...`` with the crash POINT of tests/crash_hooks.py
installed; the process dies by SIGKILL there (tests/test_resume.py)."""

import sys

from crash_hooks import install

from respkd.cli import main

if __name__ == "__main__":
    install(sys.argv[1], setattr, kill=True)
    sys.exit(main(sys.argv[2:]))
