#!/usr/bin/env python3
"""Build the committed routing eval sets from WordNet 3.0 (Debian's `wordnet-base` package).

    python3 bench/route/make_eval.py [--cache DIR] [--out DIR] [--check] [--dev DIR]

Standard library only. Downloads wordnet-base 1:3.0-37 (6.5 MB) from deb.debian.org (or reuses
DIR/wordnet-base_3.0-37_all.deb; default DIR bench/out/route/cache), checks its sha256, reads
`data.noun` and `data.verb` out of the package, and writes into --out (default
bench/route/eval, where the output is committed):

  nouns.json   the "easy" split: 12 noun lexicographer files with clearly distinct domains
               (animals, foods, plants, places, ...); a text is one synset's gloss (its
               definition and any quoted examples), e.g. "a domesticated carnivorous mammal ...".
  verbs.json   the "hard" split: 12 verb lexicographer files, whose domains are close (cognition,
               perception, communication, emotion, social, ...); a text is one synset's first
               example sentence, e.g. "She cooked dinner for the guests", so a query is a plain
               sentence and the verb that labels it is not named anywhere else.
  abstract.json  a third split kept for checking that a recipe generalises: 12 abstract noun
               files (acts, attributes, events, states, ...), glosses as in nouns.json.
  SHA256SUMS   the sha256 of each output file; `--check` rebuilds into a temporary directory and
               compares with it.

Labels are WordNet's lexicographer files: every synset is filed by lexicographers under exactly
one of 45 files (field 2 of each data line), so a task is "texts WordNet files under noun.food".
Per task, texts come from distinct synsets (no two texts share a synset, so a query is never a
near-copy of a sample): shorter than 20 characters or duplicated texts are dropped, the rest
shuffled with random.Random(f"{SEED}:{split}:{file}") and the first 10 become the adapter's
routing samples, the next 60 its held-out queries. Each task also gets a short model card
written from WordNet's own description of the file (lexnames(5WN)), for measuring card profiles.

`--dev DIR` also writes DIR/fortunes.json, a check split that is built but NOT committed: 12
topic files of BSD fortune's quotation database (Debian package `fortunes` 1:1.99.1-7.3: art,
computers, drugs, education, food, law, love, medicine, politics, science, sports, startrek),
10 samples and 40 queries each (quotations of 20 to 1,000 characters, whitespace collapsed,
shuffled per topic with the seed) — real topical text of another kind, used to check that a
recipe chosen on WordNet carries over. The quotations come from many authors, so their licence
is not clear enough to commit them.

Licence: WordNet 3.0 is distributed under Princeton's WordNet licence (bench/route/eval/LICENSE),
which allows copying and redistribution with the notice; the notice travels with the data.

Output: {"source": ..., "seed": 0, "split": ..., "tasks": [{"name", "description", "card",
         "samples": [10 str], "queries": [60 str]}]}
"""

import argparse
import hashlib
import io
import json
import lzma
import random
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

PACKAGE_URL = "http://deb.debian.org/debian/pool/main/w/wordnet/wordnet-base_3.0-37_all.deb"
PACKAGE_FILE = "wordnet-base_3.0-37_all.deb"
PACKAGE_SHA256 = "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752"
SOURCE = "WordNet 3.0, Debian package wordnet-base 1:3.0-37 (sha256 " + PACKAGE_SHA256 + ")"
SEED = 0
N_SAMPLES = 10
N_QUERIES = 60
MIN_CHARS = 20

FORTUNES_URL = "http://deb.debian.org/debian/pool/main/f/fortune-mod/fortunes_1.99.1-7.3_all.deb"
FORTUNES_SHA256 = "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5"
FORTUNE_TOPICS = ["art", "computers", "drugs", "education", "food", "law", "love", "medicine",
                  "politics", "science", "sports", "startrek"]

REPO = Path(__file__).resolve().parents[2]

# Lexicographer file number -> (name, WordNet's description of the file, from lexnames(5WN)).
LEXNAMES = {
    4: ("noun.act", "nouns denoting acts or actions"),
    5: ("noun.animal", "nouns denoting animals"),
    6: ("noun.artifact", "nouns denoting man-made objects"),
    7: ("noun.attribute", "nouns denoting attributes of people and objects"),
    8: ("noun.body", "nouns denoting body parts"),
    9: ("noun.cognition", "nouns denoting cognitive processes and contents"),
    10: ("noun.communication", "nouns denoting communicative processes and contents"),
    11: ("noun.event", "nouns denoting natural events"),
    12: ("noun.feeling", "nouns denoting feelings and emotions"),
    13: ("noun.food", "nouns denoting foods and drinks"),
    14: ("noun.group", "nouns denoting groupings of people or objects"),
    15: ("noun.location", "nouns denoting spatial position"),
    17: ("noun.object", "nouns denoting natural objects (not man-made)"),
    18: ("noun.person", "nouns denoting people"),
    19: ("noun.phenomenon", "nouns denoting natural phenomena"),
    20: ("noun.plant", "nouns denoting plants"),
    21: ("noun.possession", "nouns denoting possession and transfer of possession"),
    22: ("noun.process", "nouns denoting natural processes"),
    23: ("noun.quantity", "nouns denoting quantities and units of measure"),
    24: ("noun.relation", "nouns denoting relations between people or things or ideas"),
    25: ("noun.shape", "nouns denoting two and three dimensional shapes"),
    26: ("noun.state", "nouns denoting stable states of affairs"),
    27: ("noun.substance", "nouns denoting substances"),
    28: ("noun.time", "nouns denoting time and temporal relations"),
    29: ("verb.body", "verbs of grooming, dressing and bodily care"),
    30: ("verb.change", "verbs of size, temperature change, intensifying, etc."),
    31: ("verb.cognition", "verbs of thinking, judging, analyzing, doubting"),
    32: ("verb.communication", "verbs of telling, asking, ordering, singing"),
    33: ("verb.competition", "verbs of fighting, athletic activities"),
    34: ("verb.consumption", "verbs of eating and drinking"),
    35: ("verb.contact", "verbs of touching, hitting, tying, digging"),
    36: ("verb.creation", "verbs of sewing, baking, painting, performing"),
    37: ("verb.emotion", "verbs of feeling"),
    38: ("verb.motion", "verbs of walking, flying, swimming"),
    39: ("verb.perception", "verbs of seeing, hearing, feeling"),
    40: ("verb.possession", "verbs of buying, selling, owning"),
    41: ("verb.social", "verbs of political and social activities and events"),
}

SPLITS = {
    # Concrete, clearly distinct domains.
    "nouns": ("noun", "gloss", [5, 6, 8, 10, 12, 13, 15, 18, 20, 21, 27, 28]),
    # Close domains; a text is a sentence that uses the verb.
    "verbs": ("verb", "example", [29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 41]),
    # Abstract nouns: a second gloss split with harder, more overlapping domains.
    "abstract": ("noun", "gloss", [4, 7, 9, 11, 14, 17, 19, 22, 23, 24, 25, 26]),
}


def fetch(cache: Path, url: str = PACKAGE_URL, sha256: str = PACKAGE_SHA256) -> bytes:
    deb = cache / url.rsplit("/", 1)[1]
    if not deb.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"downloading {url}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=120) as r:
            data = r.read()
        tmp = deb.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.rename(deb)
    data = deb.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        sys.exit(f"{deb}: sha256 {digest}, expected {sha256}")
    return data


def fortunes(deb: bytes) -> dict:
    """The dev check split from the fortune database (see the module doc)."""
    tar = tarfile.open(fileobj=io.BytesIO(lzma.decompress(deb_member(deb, "data.tar"))))
    tasks = []
    for topic in FORTUNE_TOPICS:
        raw = tar.extractfile(f"./usr/share/games/fortunes/{topic}").read().decode("latin-1")
        items = {" ".join(x.split()) for x in raw.split("\n%\n")}
        items = sorted(x for x in items if 20 <= len(x) <= 1000)
        random.Random(f"{SEED}:fortunes:{topic}").shuffle(items)
        tasks.append({"name": topic, "samples": items[:10], "queries": items[10:50]})
    return {"source": "BSD fortune, Debian package fortunes 1:1.99.1-7.3 (sha256 "
            + FORTUNES_SHA256 + ")", "seed": SEED, "split": "fortunes", "tasks": tasks}


def deb_member(deb: bytes, prefix: str) -> bytes:
    """One member of a .deb (an `ar` archive) whose name starts with `prefix`."""
    assert deb[:8] == b"!<arch>\n", "not an ar archive"
    pos = 8
    while pos < len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = deb[pos + 60 : pos + 60 + size]
        if name.startswith(prefix):
            return body
        pos += 60 + size + (size & 1)
    raise KeyError(prefix)


def wordnet_files(deb: bytes) -> dict:
    tar = tarfile.open(fileobj=io.BytesIO(lzma.decompress(deb_member(deb, "data.tar"))))
    out = {}
    for pos in ("noun", "verb"):
        member = tar.getmember(f"./usr/share/wordnet/data.{pos}")
        out[pos] = tar.extractfile(member).read().decode("utf-8")
    return out


def synsets(data: str):
    """(lexicographer file number, definition, [examples]) per synset line."""
    for line in data.splitlines():
        if line.startswith("  ") or "|" not in line:
            continue  # the licence header
        fields, gloss = line.split("|", 1)
        lex_file = int(fields.split()[1])
        gloss = gloss.strip()
        definition, examples = gloss, []
        if '; "' in gloss:
            definition, rest = gloss.split('; "', 1)
            examples = [e.strip() for e in ('"' + rest).split('"')[1::2] if e.strip()]
        yield lex_file, gloss, definition.strip(), examples


def build(files: dict) -> dict:
    splits = {}
    for split, (pos, kind, lex_files) in SPLITS.items():
        by_file = {n: [] for n in lex_files}
        for lex_file, gloss, _definition, examples in synsets(files[pos]):
            if lex_file not in by_file:
                continue
            text = gloss if kind == "gloss" else (examples[0] if examples else "")
            by_file[lex_file].append(text)
        tasks = []
        for n in lex_files:
            name, description = LEXNAMES[n]
            seen, texts = set(), []
            for t in by_file[n]:
                if len(t) >= MIN_CHARS and t not in seen:
                    seen.add(t)
                    texts.append(t)
            random.Random(f"{SEED}:{split}:{name}").shuffle(texts)
            need = N_SAMPLES + N_QUERIES
            if len(texts) < need:
                sys.exit(f"{split}/{name}: {len(texts)} texts, need {need}")
            tasks.append(
                {
                    "name": name,
                    "description": description,
                    "card": card(name, description, kind),
                    "samples": texts[:N_SAMPLES],
                    "queries": texts[N_SAMPLES:need],
                }
            )
        splits[split] = {
            "source": SOURCE,
            "licence": "WordNet 3.0 licence (Princeton University); see LICENSE beside this file",
            "seed": SEED,
            "split": split,
            "text": "synset gloss" if kind == "gloss" else "first example sentence of a synset",
            "tasks": tasks,
        }
    return splits


def card(name: str, description: str, kind: str) -> str:
    """A model card such as a team would write for an adapter trained on this task."""
    what = description.split(" ", 2)[2] if description.startswith(("nouns denoting", "verbs of")) else description
    if kind == "gloss":
        body = (
            f"This adapter is fine-tuned to explain and define {description}: "
            f"given a dictionary-style description, it works with {what}."
        )
    else:
        body = f"This adapter is fine-tuned on English sentences that use {description}."
    return (
        "---\nlibrary_name: peft\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n---\n"
        f"# {name}\n\n## Model Description\n\n{body}\n\n"
        f"## Intended uses\n\nRoute prompts about {what} to this adapter.\n"
    )


def dump(split: dict) -> bytes:
    return (json.dumps(split, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def write(out: Path, splits: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, split in splits.items():
        data = dump(split)
        (out / f"{name}.json").write_bytes(data)
        sums[f"{name}.json"] = hashlib.sha256(data).hexdigest()
    return sums


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=str(REPO / "bench/out/route/cache"))
    ap.add_argument("--out", default=str(REPO / "bench/route/eval"))
    ap.add_argument("--check", action="store_true", help="rebuild and compare with SHA256SUMS")
    ap.add_argument("--dev", help="also write the uncommitted check split fortunes.json here")
    args = ap.parse_args()
    if args.dev:
        dev = Path(args.dev)
        dev.mkdir(parents=True, exist_ok=True)
        deb = fetch(Path(args.cache), FORTUNES_URL, FORTUNES_SHA256)
        (dev / "fortunes.json").write_bytes(dump(fortunes(deb)))
        print(f"wrote {dev / 'fortunes.json'}")
    splits = build(wordnet_files(fetch(Path(args.cache))))
    out = Path(args.out)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            sums = write(Path(tmp), splits)
        want = dict(
            reversed(line.split()) for line in (out / "SHA256SUMS").read_text().splitlines() if line
        )
        bad = [f for f in sums if want.get(f) != sums[f]]
        if bad:
            sys.exit(f"rebuilt {bad} differ from {out}/SHA256SUMS")
        print(f"ok: {', '.join(sorted(sums))} rebuild byte for byte")
        return
    sums = write(out, splits)
    (out / "SHA256SUMS").write_text("".join(f"{h}  {f}\n" for f, h in sorted(sums.items())))
    for f, h in sorted(sums.items()):
        print(f"{h}  {out / f}")


if __name__ == "__main__":
    main()
