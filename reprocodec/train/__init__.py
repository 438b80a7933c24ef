"""Training, export and evaluation of the shipped image-codec weights.

Pipeline (each step is one command, run from the repository root; outputs in data/ and runs/,
both git-ignored):

    python -m reprocodec.train.data --out data/train          # patches (never Kodak)
    python -m reprocodec.train.schedule --minutes 56 --only bmshj2018-hyperprior-q2 \\
        bmshj2018-hyperprior-q1 bmshj2018-hyperprior-q3        # base, then two fine-tunes
    python -m reprocodec.train.schedule --minutes 43 --only mbt2018-mean-q1   # beside it
    python -m reprocodec.train.evaluate --weights reprocodec/weights/NAME.pt --jpeg --record

Every stage resumes from runs/<stage>/checkpoint.pt, and a budget counts training seconds
already spent, so rerunning the schedule with a larger ``--minutes`` continues the same runs
(``--device cuda`` on a machine with a GPU). Each finished stage is exported at once to
reprocodec/weights/<name>.pt/.json (see export.py for the format).
"""
