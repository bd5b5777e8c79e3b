"""What every head learned: attention statistics, word alignments and their error rate (the analysis tool's parts)."""
