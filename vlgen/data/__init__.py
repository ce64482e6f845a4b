"""Datasets and batch plans: the procedural shapes and scenes, image folders, VAE latents, and which
samples and random numbers each training step uses."""
