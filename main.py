"""`python main.py {fit,validate,test,predict} --config configs/...yaml`, and
`python main.py reproduce --config configs/reproduce/<preset>.yaml`; see `pipeline.cli`."""

from pipeline.cli import main

if __name__ == "__main__":
    main()
