#!/usr/bin/env python3
"""Make sure a virtualenv with the independent protocol peers (tests/peers/requirements.txt) exists.

Prints the venv's python interpreter on stdout. Idempotent and safe to run from several test
processes at once (an exclusive file lock guards creation). The venv lives under target/ so
`cargo clean` removes it and nothing is installed system-wide.
"""
import fcntl
import hashlib
import os
import subprocess
import sys
import venv

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REQS = os.path.join(HERE, "requirements.txt")


def main() -> int:
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    env_dir = os.environ.get("LABGATE_PEERS_VENV") or os.path.join(target, "peers-venv")
    os.makedirs(os.path.dirname(env_dir), exist_ok=True)
    python = os.path.join(env_dir, "bin", "python")
    with open(REQS, "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    stamp = os.path.join(env_dir, ".requirements.sha256")
    with open(env_dir + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        have = open(stamp).read().strip() if os.path.exists(stamp) else ""
        if have != want or not os.path.exists(python):
            venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
            subprocess.run(
                [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", REQS],
                check=True,
                stdout=sys.stderr,
            )
            with open(stamp, "w") as f:
                f.write(want)
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
