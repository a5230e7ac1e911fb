"""The command lines' shared argument parsing (standard library only): usage errors in one line, and Hugging
Face's underscore spellings of the flags (``--max_new_tokens``) accepted beside ours (``--max-new-tokens``)."""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (``PROG: error: ... (see --help)``) and
    exit status 2, instead of the usage text and the error."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")

    def parse_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_args(hf_spellings(argv, self), namespace)


def hf_spellings(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--max_new_tokens 8`` / ``--top_p=0.9`` -> our ``--max-new-tokens`` spelling where that is a flag of
    ``parser`` (values, and anything after ``--``, are left as they are)."""
    known = set(parser._option_string_actions)
    out = []
    for i, tok in enumerate(argv):
        if tok == "--":
            return out + argv[i:]
        name, eq, value = tok.partition("=")
        if name.startswith("--") and "_" in name and name not in known and name.replace("_", "-") in known:
            tok = name.replace("_", "-") + eq + value
        out.append(tok)
    return out
