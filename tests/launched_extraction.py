"""Run by the tests under `accelerate launch`: `launched_extraction.py DATA VAE OUT SHARD_SIZE DELAY`
extracts latents as `vlgen extract-latents` does, each shard taking at least DELAY seconds (so that
a test can kill the launch between shards)."""
import sys
import time

from accelerate import Accelerator

from vlgen.data import latents


def main():
    data, vae, out, shard_size, delay = sys.argv[1:]
    write = latents._write_shard

    def slow_write(*args, **kwargs):
        write(*args, **kwargs)
        time.sleep(float(delay))

    latents._write_shard = slow_write
    latents.extract_latents(Accelerator(), data, vae, out, resolution=16, batch_size=2, shard_size=int(shard_size),
                            progress=False)


if __name__ == "__main__":
    main()
