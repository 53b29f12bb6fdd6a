#!/usr/bin/env python3
"""Write the Badge Request Tool's synthetic sample data set: N employees (default
3000), one badge request each, as a JSON array for `POST /import`, one employee per
line. Deterministic: the same seed gives the same bytes. No real person's data.

    python3 generate.py [--count N] [--seed S] > employees.json
"""
import argparse
import json
import random

GIVEN = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Niklaus",
         "Radia", "Ken", "Margaret", "Tony", "Shafi", "Leslie", "Sophie", "Dennis",
         "Karen", "John", "Hedy", "Tim", "Lynn", "Whitfield", "Joan", "Butler",
         "Mary", "Robin", "Anita", "Vint", "Adele", "Ivan"]
SYLLABLES = ["ber", "lin", "mar", "sch", "wei", "ton", "hal", "ric", "dor", "fen",
             "gal", "hus", "kel", "lor", "mos", "nar", "pet", "ros", "sil", "var"]
SITES = ["Zurich", "Geneva", "Lausanne", "Bern"]
ZONES = ["lobby", "office", "lab-1", "lab-2", "datacenter", "garage", "cafeteria",
         "archive", "roof", "server-room"]


def family(rng):
    name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
    return name.capitalize()


def employees(count, seed):
    rng = random.Random(seed)
    ids = rng.sample(range(1, 1_000_000), count)
    for n in ids:
        zones = ["lobby"] + rng.sample(ZONES[1:], rng.randint(0, 3))
        yield {
            "employee_id": f"E{n:06d}",
            "name": f"{rng.choice(GIVEN)} {family(rng)}",
            "site": rng.choice(SITES),
            "zones": zones,
        }


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--seed", type=int, default=20261122)
    args = p.parse_args()
    # One employee per line: readable, and diffs stay small.
    lines = [json.dumps(e) for e in employees(args.count, args.seed)]
    print("[\n" + ",\n".join(lines) + "\n]")


if __name__ == "__main__":
    main()
