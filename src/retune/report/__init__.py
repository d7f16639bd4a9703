"""`report.html`: a self-contained page that shows a run (or several runs side by side, or a search).

    build(["runs/a"])                       -> runs/a/report.html
    build(["runs/a", "runs/b"], "cmp.html") -> one comparison table, overlaid curves, a colour per run
    build(["runs/search"])                  -> a search directory (tune.json): the Pareto front and its trials

build.py assembles the pages, data.py reads a run directory, charts.py draws (Plotly), tables.py and
examples.py tabulate, page.py writes one HTML file with every script inlined; rows.py is one run as a
row and listing.py prints them (`retune runs`). Importing this package imports no plotly: a listing
stays fast.
"""
