"""The read path's caches: L1 in each worker, L2 in Redis shared by all, and the tiered lookup."""
