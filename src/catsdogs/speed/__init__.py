"""How fast the pieces run and how long a run will take: throughput, estimates, the benchmark, profiles."""
