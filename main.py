"""`python main.py {fit,validate,test,predict} --config configs/...yaml`, and
`python main.py reproduce --config configs/reproduce/<preset>.yaml`, `serve` and `verify`; see
`knockoff_lab.pipeline.entry`."""

from knockoff_lab.pipeline.entry import main

if __name__ == "__main__":
    main()
