"""Publishing and comparing: model cards, Hub uploads, results reading, leaderboard and plots. Never imports torch."""
