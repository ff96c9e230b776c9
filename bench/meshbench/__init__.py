"""Benchmark harness: direct vs nodemesh vs a HAProxy mTLS pair on the lab (`make bench`)."""
