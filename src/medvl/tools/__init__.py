"""Tools built on the medvl core (quickstart, phantom synthesis, benchmarks, demo); the core never imports them."""
