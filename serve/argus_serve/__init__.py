"""Ray Serve application: retrieval and ranking of an Argus training run behind HTTP."""
