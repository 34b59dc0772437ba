"""knockoff-lab's framework-free layers, under one name so they install beside other packages.

Every import points down this stack (a test, `tests/test_layers.py`, keeps it so):

    core                         errors, atomic writes, checkpoints, digests, config fragments
    nets, evaluation             the network registry and loading; metrics and figures
    defences, ood                answer transforms; OOD scorers
    attacks                      query strategies, the attacker's answer processing (D-DAE
                                 runs the defences on its shadow models)
    api                          the prediction API, its books, server and remote client
    ownership                    proofs of theft: verifiers asking a suspect through an API
    datamodules                  (top level) datasets, pools, the stored transfer set
    lightning_modules            (top level) LightningModules and callbacks
    pipeline                     the command line, the trust policy, reproduce presets, report
"""
