"""The test harness and the local site: real programs on loopback; stand-ins only where the real one cannot run."""
