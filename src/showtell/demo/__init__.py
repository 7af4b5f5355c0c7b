"""Everything only `showtell demo` needs, kept out of the library it demonstrates:

- `synthetic`: the offline data set (scenes of coloured shapes in COCO's layout, with
  their captions and the attributes that score them);
- `pipeline`: the demo itself, the seed's recipe run end to end on that data.

Nothing outside this package imports it but the CLI (`make-synthetic`, `demo`) and
tests and benchmarks that need synthetic data.
"""
