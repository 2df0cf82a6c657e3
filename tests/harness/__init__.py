"""What tests, benches and scripts start: real service processes, sites and phones."""
