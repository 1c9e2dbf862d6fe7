"""One colour per class, for every plot that colours by class.

A class's colour follows its place in the dataset description's class list, never the classes a
set happens to hold, so a class absent from a test set leaves the others' colours alone (with
matplotlib's colour cycle every class after it would shift) and a class looks the same in every
run of a dataset. Melanoma, the class a reader looks for first, is the same red in every dataset.
"""

from skinjax.data import datasets

MELANOMA_COLOUR = 'tab:red'
# The Tableau palette (matplotlib's default cycle) without melanoma's red, in its own order.
OTHER_COLOURS = ('tab:blue', 'tab:orange', 'tab:green', 'tab:purple', 'tab:brown', 'tab:pink',
                 'tab:gray', 'tab:olive', 'tab:cyan')


def class_colours(description: datasets.DatasetDescription) -> dict[str, str]:
  """{class name: matplotlib colour} for every class of the description.

  The non-melanoma classes take OTHER_COLOURS in class-list order; past nine of them the palette
  repeats (the legend's names still tell them apart).
  """
  others = [name for name in description.class_names if name != description.melanoma]
  colours = {name: OTHER_COLOURS[k % len(OTHER_COLOURS)] for k, name in enumerate(others)}
  if description.melanoma is not None:
    colours[description.melanoma] = MELANOMA_COLOUR
  return colours
