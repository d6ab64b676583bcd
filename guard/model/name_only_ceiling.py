#!/usr/bin/env python3
"""How far can a model that reads only the name go on the phishing set?

Two general-purpose learners that share nothing with Guard's model, on the same data
(guard/model/data, from fetch-data.sh): a logistic regression over TF-IDF character n-grams
(2-5 and word-bounded 3-6, ~700k features), and gradient-boosted trees (LightGBM) over the
30,000 n-grams (1-5) a chi-squared test ranks highest plus length, dots, hyphens and digits.
Names go to training (70%), validation (10%) and test (20%) by a hash of their last two labels;
the threshold is the one that flags 0.1% of the validation benign names, as in the trainer.
Prints ROC AUC and recall at that threshold on the test split.

    pip install scikit-learn lightgbm
    python3 guard/model/name_only_ceiling.py [--trees]     # --trees: also LightGBM (~6 min)
"""
import hashlib
import os
import sys

import numpy as np
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def lines(name):
    return [l.strip().lower() for l in open(os.path.join(DATA, name)) if l.strip()]


def split(name):
    h = int(hashlib.sha256(".".join(name.split(".")[-2:]).encode()).hexdigest()[:8], 16) % 10
    return "train" if h < 7 else ("val" if h == 7 else "test")


def report(label, p, y, s):
    val_neg = np.sort(p[(s == "val") & (y == 0)])
    thr = val_neg[int(np.ceil(len(val_neg) * (1 - 0.001)))]
    te = s == "test"
    recall = ((p > thr) & te & (y == 1)).sum() / (te & (y == 1)).sum()
    fpr = ((p > thr) & te & (y == 0)).sum() / (te & (y == 0)).sum()
    print(f"| {label} | {roc_auc_score(y[te], p[te]):.4f} | {recall:.4f} | {fpr * 100:.3f}% |", flush=True)


def main():
    pos, neg = lines("phishing.txt"), lines("benign.txt")
    names = np.array(pos + neg)
    y = np.array([1] * len(pos) + [0] * len(neg))
    s = np.array([split(n) for n in names])
    tr = s == "train"
    print("| learner | ROC AUC | recall at 0.1% FP | false positives |")
    print("|---|---:|---:|---:|")
    grams = TfidfVectorizer(analyzer="char", ngram_range=(2, 5), sublinear_tf=True, min_df=2, dtype=np.float32)
    words = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 6), sublinear_tf=True, min_df=2, dtype=np.float32)
    f = hstack([grams.fit(names[tr]).transform(names), words.fit(names[tr]).transform(names)]).tocsr()
    for c in (1.0, 8.0):
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, solver="liblinear")
        lr.fit(f[tr], y[tr])
        report(f"logistic regression, character n-grams, C={c:g}", lr.decision_function(f), y, s)
    if "--trees" in sys.argv:
        import lightgbm as lgb
        from sklearn.feature_selection import SelectKBest, chi2

        grams = TfidfVectorizer(analyzer="char", ngram_range=(1, 5), sublinear_tf=True, min_df=3, dtype=np.float32)
        g = grams.fit(names[tr]).transform(names).tocsr()
        g = SelectKBest(chi2, k=30000).fit(g[tr], y[tr]).transform(g)
        shape = np.array([[len(n), n.count("."), n.count("-"), sum(ch.isdigit() for ch in n)] for n in names],
                         dtype=np.float32)
        g = hstack([g, csr_matrix(shape)]).tocsr()
        trees = lgb.LGBMClassifier(n_estimators=1500, learning_rate=0.05, num_leaves=63, scale_pos_weight=10,
                                   colsample_bytree=0.3, n_jobs=2, verbose=-1)
        trees.fit(g[tr], y[tr], eval_X=(g[s == "val"],), eval_y=(y[s == "val"],),
                  callbacks=[lgb.early_stopping(100, verbose=False)])
        report("gradient-boosted trees (LightGBM), top 30k n-grams + shape", trees.predict_proba(g)[:, 1], y, s)


if __name__ == "__main__":
    main()
