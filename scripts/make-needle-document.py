"""Write the README's sample document: filler text with one planted fact, the same every time.

python scripts/make-needle-document.py OUT.txt [--lines N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "sigma",
]
FACT = "The special magic number for conch is: {number}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(args.lines)]
    number = rng.randrange(1_000_000, 10_000_000)
    lines[rng.randrange(args.lines // 10, args.lines)] = FACT.format(number=number)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}: {args.out.stat().st_size:,} characters; the answer is {number}")


if __name__ == "__main__":
    main()
