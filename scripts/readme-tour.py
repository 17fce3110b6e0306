#!/usr/bin/env python3
"""Replays the README's tour: every code block marked `<!-- replayed by scripts/readme-tour.py -->`, command by
command, in order, in one bash with job control (so `capstan up … &` works as typed), checking each command's exit
code: 0, or the N of an `(exit N)` in its comment. Run from the repository's root after the release build
(scripts/demo.sh builds it); CI runs it after the demos. Prints `N passed, N failed` and exits non-zero on a failure.
"""
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile

MARK = "<!-- replayed by scripts/readme-tour.py -->"


def blocks(readme):
    """The marked ```sh blocks, each as a list of (line number, command)."""
    lines = readme.splitlines()
    out = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == MARK and i + 1 < len(lines) and lines[i + 1].startswith("```"):
            j = i + 2
            block = []
            while j < len(lines) and not lines[j].startswith("```"):
                block.append((j + 1, lines[j]))
                j += 1
            out.append(block)
            i = j
        i += 1
    return out


def split_comment(line):
    """The command and its comment (`#` outside quotes and not part of `$#` or `${#`)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1] in " \t"):
            return line[:k].rstrip(), line[k + 1 :].strip()
    return line.rstrip(), ""


def script(block):
    """A bash script that runs each command and records whether its exit code was the expected one."""
    out = [
        "set -m",  # job control: `capstan up &` and `%1` behave as in a terminal
        "ok=0; bad=0",
        "check() { if [ \"$1\" = \"$2\" ]; then ok=$((ok+1)); else bad=$((bad+1)); "
        "echo \"README.md:$3: exit $1, expected $2: $4\" >&2; fi; }",
        "trap 'capstan shutdown >/dev/null 2>&1; sleep 2; kill $(jobs -p) 2>/dev/null; "
        "echo \"$ok passed, $bad failed\"; exit $(( bad > 0 ? 1 : 0 ))' EXIT",
    ]
    for number, line in block:
        command, comment = split_comment(line)
        if not command:
            continue
        if command.endswith("\\"):
            raise SystemExit(f"README.md:{number}: a replayed command must fit on one line")
        expected = re.search(r"\(exit (\d+)\)", comment)
        expected = expected.group(1) if expected else "0"
        out.append(f"echo {shlex.quote('$ ' + command)} >&2")
        if command.endswith("&") and not command.endswith("&&"):
            out.append(command)
            out.append(f"check 0 0 {number} {shlex.quote(command)}")
        else:
            out.append(command)
            out.append(f"check $? {expected} {number} {shlex.quote(command)}")
    return "\n".join(out) + "\n"


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        found = blocks(f.read())
    if not found:
        print("no replayed block in README.md", file=sys.stderr)
        return 1
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/capstan/target"))
    env = dict(os.environ)
    env.pop("CAPSTAN_SERVER", None)
    env.pop("CAPSTAN_TOKEN", None)
    # The release build this script is run after, whatever CARGO_TARGET_DIR says; the tour's own export adds the
    # default place in front, which is the same directory unless it was moved.
    env["PATH"] = os.path.join(target, "release") + os.pathsep + env.get("PATH", "")
    subprocess.run(["rm", "-rf", os.path.join(root, ".capstan", "tour")], check=True)
    failed = 0
    for block in found:
        with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
            f.write(script(block))
        # Its own session, so that a tour that hangs is stopped whole: bash, `capstan up` and the replicas.
        p = subprocess.Popen(["bash", f.name], cwd=root, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            failed += p.wait(timeout=600) != 0
        except subprocess.TimeoutExpired:
            print("the tour did not finish in 10 minutes", file=sys.stderr)
            data = os.path.join(root, ".capstan", "tour")
            subprocess.run(["capstan", "shutdown", "--data", data], env=env, capture_output=True, timeout=30)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            failed += 1
        os.unlink(f.name)
    leftovers = subprocess.run(["pgrep", "-f", os.path.join(target, "release", "capstan-hello")], capture_output=True)
    if leftovers.stdout.strip():
        print(f"replicas left behind: {leftovers.stdout.decode().split()}", file=sys.stderr)
        failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
