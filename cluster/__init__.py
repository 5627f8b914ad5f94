"""Ray cluster-launcher and KubeRay configs, job submission and capacity planning."""
