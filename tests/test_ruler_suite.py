#!/usr/bin/env python3
"""The RULER-style prompt generator (tools/ruler_suite.py), pure Python: a regex tokenizer stands
in for the model's. Lengths, determinism, and every task's answers and spans checked against
an independent reading of the generated text (counting words, parsing needles)."""
import collections
import json
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import ruler_suite as rs  # noqa: E402

TOKEN = re.compile(r"\w+|[^\w\s]")


def offsets(text):
    return [m.span() for m in TOKEN.finditer(text)]


def count(text):
    return len(offsets(text))


PARAGRAPHS = [
    {"context": "The ferry to Oskarholm leaves at dawn. Its captain is Ilse Varga.", "question": "Who captains the ferry to Oskarholm?",
     "answer": "Ilse Varga"},
    {"context": "The old mill by the river grinds barley. It was built in 1788.", "question": "When was the old mill built?",
     "answer": "1788"},
    {"context": "Tessaly's bakery sells rye bread on Tuesdays only.", "question": "When does Tessaly's bakery sell rye bread?",
     "answer": "on Tuesdays only"},
]


class Generator(unittest.TestCase):
    def sample(self, task, target=None, seed=0, index=0):
        target = target or (2000 if task == "cwe" else 600)  # cwe's 300 common entries alone are ~900 tokens
        return rs.make_sample(task, count, target, seed, index, PARAGRAPHS)

    def test_length_fits_and_is_maximal(self):
        for task in rs.TASKS:
            s, target = self.sample(task), 2000 if task == "cwe" else 600
            self.assertLessEqual(count(s.context), target, task)
            self.assertGreater(count(s.context), target * 0.8, task)  # one filler unit less than the target at most

    def test_deterministic_and_seeded(self):
        for task in rs.TASKS:
            a, b = self.sample(task), self.sample(task)
            self.assertEqual((a.context, a.question, a.answers, a.spans), (b.context, b.question, b.answers, b.spans))
            self.assertNotEqual(a.context, self.sample(task, seed=1).context, task)
            self.assertNotEqual(a.context, self.sample(task, index=1).context, task)

    def test_token_spans_cover_their_characters(self):
        for task in rs.TASKS:
            s = self.sample(task)
            offs = offsets(s.context)
            for (start, end), (first, last) in zip(s.spans, rs.token_spans(offs, s.spans)):
                self.assertLessEqual(offs[first][0], start)
                self.assertGreaterEqual(offs[last - 1][1], end)
                self.assertGreater(offs[first][1], start)  # no token outside the span on either side
                self.assertLess(offs[last - 1][0], end)

    def test_token_spans_by_hand(self):
        # "ab cd ef": tokens [0,2) [3,5) [6,8); characters [3, 7) overlap tokens 1 and 2.
        self.assertEqual(rs.token_spans([(0, 2), (3, 5), (6, 8)], [(3, 7), (0, 1)]), [(1, 3), (0, 1)])
        with self.assertRaises(ValueError):
            rs.token_spans([(0, 2), (3, 5)], [(2, 3)])

    def needles(self, text):
        return re.findall(r"One of the special magic numbers for (\w+) is: (\d+)\.", text)

    def test_niah(self):
        for task, n_needles, n_spans in (("niah_single", 1, 1), ("niah_multikey", 4, 1), ("niah_multivalue", 4, 4),
                                         ("niah_multiquery", 4, 4)):
            s = self.sample(task)
            found = self.needles(s.context)
            self.assertEqual(len(found), n_needles, task)
            spans = [self.needles(s.context[a:b]) for a, b in s.spans]
            self.assertEqual(len(spans), n_spans, task)
            for one in spans:
                self.assertEqual(len(one), 1, task)  # each span is exactly one needle
                key, value = one[0]
                self.assertIn(key, s.question, task)
                self.assertIn(value, s.answers, task)
            self.assertEqual(sorted(v for [(k, v)] in spans), sorted(s.answers), task)
            if task == "niah_multikey":  # the distractors' keys are not asked
                asked = [k for k, _ in found if k in s.question]
                self.assertEqual(len(asked), 1)

    def test_variable_tracking(self):
        s = self.sample("vt")
        value = re.search(r"value (\d+)", s.question).group(1)
        assignments = dict(re.findall(r"VAR (\w+) = (VAR \w+|\d+)\.", s.context))
        chain = {name for name, rhs in assignments.items() if rhs == value}  # follow the chain from the value
        grown = True
        while grown:
            new = {name for name, rhs in assignments.items() if rhs.startswith("VAR ") and rhs[4:] in chain}
            grown = not new <= chain
            chain |= new
        self.assertEqual(sorted(chain), sorted(s.answers))
        self.assertEqual(len(s.spans), 5)
        for a, b in s.spans:
            self.assertRegex(s.context[a:b], r"^VAR \w+ = (VAR \w+|\d+)\.$")

    def list_words(self, text):
        return re.findall(r"\d+\. (\w+)", text)

    def test_common_words(self):
        s = self.sample("cwe", target=2000)
        counts = collections.Counter(self.list_words(s.context))
        top = [w for w, c in counts.most_common(10)]
        self.assertEqual(sorted(top), sorted(s.answers))
        self.assertTrue(all(counts[w] == 30 for w in s.answers))
        self.assertEqual(counts.most_common(11)[-1][1], 3)
        self.assertEqual(len(s.spans), 300)
        self.assertTrue(all(s.context[a:b] in s.answers for a, b in s.spans))

    def test_frequent_words(self):
        s = self.sample("fwe")
        words = s.context.split(". ", 1)[1].split()
        counts = collections.Counter(words).most_common(4)
        self.assertEqual([w for w, _ in counts[:3]], s.answers)
        self.assertTrue(counts[0][1] > counts[1][1] > counts[2][1] > counts[3][1])
        self.assertEqual(len(s.spans), sum(c for _, c in counts[:3]))
        self.assertTrue(all(s.context[a:b] in s.answers for a, b in s.spans))

    def test_qa(self):
        for index in range(4):
            s = self.sample("qa", index=index)
            gold = next(p for p in PARAGRAPHS if p["question"] == s.question)
            self.assertEqual(s.answers, [gold["answer"]])
            [(a, b)] = s.spans
            self.assertEqual(s.context[a:b], gold["answer"])
            self.assertEqual(s.context.count(gold["context"]), 1)  # the gold paragraph once, distractors around it
            self.assertLessEqual(s.context.index(gold["context"]), a)

    def test_score(self):
        self.assertEqual(rs.score(["12", "34"], "all", "It is 12."), 0.5)
        self.assertEqual(rs.score(["12", "34"], "all", "34 and 12"), 1.0)
        self.assertEqual(rs.score(["Ilse Varga", "x"], "part", "ilse varga"), 1.0)
        self.assertEqual(rs.score(["a1"], "part", "none"), 0.0)

    def test_bad_input(self):
        with self.assertRaises(ValueError):
            rs.make_sample("nope", count, 600, 0, 0)
        with self.assertRaises(ValueError):
            rs.make_sample("qa", count, 600, 0, 0, None)
        with self.assertRaises(ValueError):
            rs.make_sample("niah_single", count, 5, 0, 0)  # the needle alone is longer

    def test_sample_json(self):
        s = self.sample("niah_single")
        record = json.loads(json.dumps(s.to_json(rs.token_spans(offsets(s.context), s.spans))))
        self.assertEqual(record["spans"], [list(x) for x in s.spans])
        self.assertEqual(record["answers"], s.answers)


if __name__ == "__main__":
    unittest.main()
