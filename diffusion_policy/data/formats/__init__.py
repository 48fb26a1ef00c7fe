"""Outside dataset formats in and out. A reader yields the same episodes-of-arrays as our Zarr store
(:class:`~diffusion_policy.data.formats.source.EpisodeSource`); :func:`convert.convert` writes one
as a store. Nothing after the dataset knows where the data came from."""
