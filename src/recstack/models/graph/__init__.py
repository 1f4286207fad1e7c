"""Graph collaborative filtering: LightGCN and NGCF."""
