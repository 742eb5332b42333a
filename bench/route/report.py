#!/usr/bin/env python3
"""Tables of the routing eval: quiver's route_eval beside sentence-transformers' st_eval.py.

    python3 bench/route/report.py QUIVER.json ST.json

Per split: every pooling/recipe with quiver's and the peer's top-1 / top-3, and the difference
in top-1 from LoraRetriever (the peer's `last/centroid`: sentence-transformers embeddings, the
normalised mean of the samples); then per task, the default beside LoraRetriever; then card
profiles. Markdown, for docs/routing.md. Standard library only.
"""

import json
import sys

BASELINE = "last/centroid"


def pct(x):
    return f"{100 * x:.1f}"


def main():
    ours = json.load(open(sys.argv[1], encoding="utf-8"))
    peer = json.load(open(sys.argv[2], encoding="utf-8"))
    default = ours["default"]
    print(f"embedders: {json.dumps(ours['embedders'])}; default `{default}`; "
          f"LoraRetriever = {peer['peer']} `{BASELINE}`\n")
    for split, s in ours["splits"].items():
        p = peer["splits"][split]["results"]
        base = p[BASELINE]
        print(f"### {split}: {len(s['tasks'])} tasks, {s['queries']} queries\n")
        print("| pooling/recipe | quiver top-1 | quiver top-3 | peer top-1 | peer top-3 "
              "| top-1 − LoraRetriever (points) |")
        print("|---|---|---|---|---|---|")
        for name, r in s["results"].items():
            ref = p.get(name.removesuffix("/card")) if not name.endswith("/card") else None
            mark = "**" if name == default else ""
            print(f"| {mark}{name}{mark} | {pct(r['top1'])} | {pct(r['top3'])} | "
                  f"{pct(ref['top1']) if ref else '—'} | {pct(ref['top3']) if ref else '—'} | "
                  f"{100 * (r['top1'] - base['top1']):+.1f} |")
        print()
        print(f"| task | LoraRetriever top-1 | `{default}` top-1 | card profile top-1 |")
        print("|---|---|---|---|")
        card = s["results"].get(default + "/card")
        for i, task in enumerate(s["tasks"]):
            c = pct(card["per_task"][i][0]) if card else "—"
            print(f"| {task} | {pct(base['per_task'][i][0])} | "
                  f"{pct(s['results'][default]['per_task'][i][0])} | {c} |")
        print()


if __name__ == "__main__":
    main()
