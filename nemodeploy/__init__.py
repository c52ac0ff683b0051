"""nemodeploy: plan, bring up and serve Nemotron 3 hybrid MoE models on real clusters."""

__version__ = "0.1.0"
