#!/usr/bin/env python3
"""The README's figure for pipelines/examples/beyond-english-mini.yaml: held-out
bits per character of English and of the target language, for the base model
and each further-pretrained one, read from the run's perplexity artifacts.

  python3 scripts/mini_study_figure.py pipelines/examples/.babelflow pipelines/examples/beyond-english-mini.svg
"""
import json
import sys
from pathlib import Path

ORDER = [
    ("perplexity_base@base", "base"),
    ("perplexity@pretrain-base-target_only", "target only"),
    ("perplexity@pretrain-base-bilingual", "bilingual"),
    ("perplexity_base@extended", "extended vocab (untrained)"),
    ("perplexity@pretrain-extended-target_only", "ext. target only"),
    ("perplexity@pretrain-extended-bilingual", "ext. bilingual"),
    ("perplexity_new_rows@pretrain_after_new_rows-target_only", "rows first, target"),
    ("perplexity_new_rows@pretrain_after_new_rows-bilingual", "rows first, bilingual"),
]


def main():
    store, out = Path(sys.argv[1]), Path(sys.argv[2])
    found = {}
    for manifest in (store / "artifacts").glob("*/manifest.json"):
        m = json.loads(manifest.read_text())
        if m.get("recipe") == "beyond-english-mini" and m["kind"] == "perplexity":
            stats = json.loads((manifest.parent / "stats.json").read_text())
            # The newest run of each instance.
            if m["instance"] not in found or m["finished_at"] > found[m["instance"]][0]:
                found[m["instance"]] = (m["finished_at"], stats["per_lang"])
    missing = [name for name, _ in ORDER if name not in found]
    if missing:
        sys.exit(f"not in {store}: {', '.join(missing)}")
    langs = [l for l in found[ORDER[0][0]][1] if l != "en"] + ["en"]
    colours = {langs[0]: "#c0504d", "en": "#4f81bd"}
    w, h, left, bottom, top = 960, 300, 50, 70, 30
    group = (w - left - 10) / len(ORDER)
    bar = group / (len(langs) + 1)
    ymax = 4.0
    y = lambda v: top + (h - top - bottom) * (1 - v / ymax)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="16" font-size="13">Held-out bits per character (lower is better): SmolLM2-135M, {langs[0]} and English</text>']
    for t in range(0, 5):
        parts.append(f'<line x1="{left}" x2="{w - 10}" y1="{y(t)}" y2="{y(t)}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y(t) + 4}" text-anchor="end">{t}</text>')
    for g, (name, label) in enumerate(ORDER):
        x0 = left + g * group + bar / 2
        for k, lang in enumerate(langs):
            v = found[name][1][lang]["bits_per_char"]
            x = x0 + k * bar
            parts.append(f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bar - 2:.1f}" height="{y(0) - y(v):.1f}" fill="{colours[lang]}"/>'
                         f'<text x="{x + bar / 2 - 1:.1f}" y="{y(v) - 3:.1f}" text-anchor="middle">{v:.2f}</text>')
        parts.append(f'<text x="{x0 + bar * len(langs) / 2:.1f}" y="{h - bottom + 16}" text-anchor="middle">{label}</text>')
    for k, lang in enumerate(langs):
        parts.append(f'<rect x="{left + k * 110}" y="{h - 28}" width="12" height="12" fill="{colours[lang]}"/>'
                     f'<text x="{left + k * 110 + 16}" y="{h - 18}">{lang} held out</text>')
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n")
    print(out)


if __name__ == "__main__":
    main()
