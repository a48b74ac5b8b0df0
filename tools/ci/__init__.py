"""CI gates run by .ci/run after the test suite."""
