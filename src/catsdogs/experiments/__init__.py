"""Across DVC experiments: main and its experiments side by side (compare), and the spread over seeds (seeds).

No stage imports these, so changing a report across experiments reruns nothing.
"""
