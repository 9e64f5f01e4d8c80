"""Recorded conversations as turns and compactions, read from a `Source` (`data`), and what they measure
(`model`): each compaction's tax, and their replay under another compaction setting. Pure but for `data`'s
one read; below the report modules: `report conversation` shows the compaction tax, `compactobs tune`
replays, and neither imports the other."""
