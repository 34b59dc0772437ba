"""`python -m datamodules.overlap`: overlap fractions per dataset, and name-matcher proposals
nobody has sorted yet (curate them after adding or renaming classes)."""

from datamodules.overlap import DATASETS, catalog, fractions, unsorted_proposals

print(f"{'dataset':<12}{'classes':>8}{'overlap':>10}{'+ broader/narrower':>20}")
for name in DATASETS:
    strict, wide = fractions(name)
    print(f"{name:<12}{len(catalog(name)['classes']):>8}{strict:>10.1%}{wide:>20.1%}")
    for cls, hits in unsorted_proposals(name).items():
        print(f"  unsorted proposal: {cls} -> {', '.join(hits)}")
