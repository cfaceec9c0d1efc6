"""Every model on the test split side by side: scores, paired statistics, reports, the champion, comparisons."""
