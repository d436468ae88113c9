"""Offline data preparation: genome FASTA (+ BED splits) -> WebDataset shards + manifest (DESIGN §3)."""
