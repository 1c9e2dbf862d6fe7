import csv

from hypothesis import given, settings, strategies as st
import ml_collections
import numpy as np
import pytest

from skinjax.data import datasets
from skinjax.data import handle
from skinjax.data import splits as splits_lib
from skinjax.data.constants import CLASS_NAMES, NUM_CLASSES

# HAM10000's class mix (akiec..vasc), to make realistic skewed data.
HAM_CLASS_SHARES = np.array([327, 514, 1099, 115, 1113, 6705, 142]) / 10015


def lesion_dataset(num_lesions: int, seed: int = 0, max_images: int = 4):
  """labels, groups for lesions with 1..max_images images each, classes skewed as in HAM10000."""
  rng = np.random.default_rng(seed)
  lesion_labels = rng.choice(NUM_CLASSES, size=num_lesions, p=HAM_CLASS_SHARES)
  lesion_labels[:5 * NUM_CLASSES] = np.arange(5 * NUM_CLASSES) % NUM_CLASSES  # Enough of each class to stratify.
  sizes = rng.integers(1, max_images + 1, size=num_lesions)
  labels = np.repeat(lesion_labels, sizes)
  groups = np.repeat([f'HAM_{i:07d}' for i in range(num_lesions)], sizes)
  order = rng.permutation(len(labels))
  return labels[order], groups[order]


def assert_partition(splits, num_images):
  assert list(splits) == ['train', 'val', 'test']
  for indices in splits.values():
    assert indices.dtype.kind == 'i'
    assert np.all(np.diff(indices) > 0), 'indices must be sorted and unique'
  np.testing.assert_array_equal(np.sort(np.concatenate(list(splits.values()))), np.arange(num_images))


def test_grouped_split_keeps_lesions_together_and_hits_fractions():
  labels, groups = lesion_dataset(3000)
  splits = splits_lib.make_splits(labels, groups)
  assert_partition(splits, len(labels))
  assert splits_lib.leak_report(splits, groups)['shared_lesions_total'] == 0
  overall = np.bincount(labels, minlength=NUM_CLASSES) / len(labels)
  for name, fraction in zip(splits_lib.SPLIT_NAMES, (0.6, 0.2, 0.2)):
    indices = splits[name]
    assert len(indices) / len(labels) == pytest.approx(fraction, abs=0.01)
    proportions = np.bincount(labels[indices], minlength=NUM_CLASSES) / len(indices)
    np.testing.assert_allclose(proportions, overall, atol=0.01)


def test_grouped_split_is_deterministic_for_a_seed():
  labels, groups = lesion_dataset(500)
  first = splits_lib.make_splits(labels, groups, seed=3)
  again = splits_lib.make_splits(labels, groups, seed=3)
  other = splits_lib.make_splits(labels, groups, seed=4)
  for name in first:
    np.testing.assert_array_equal(first[name], again[name])
  assert any(not np.array_equal(first[name], other[name]) for name in first)


def test_a_lesion_counts_for_the_majority_label_of_its_images():
  # Lesion 'big' has 3 nv and 2 mel images, so it is dealt with the nv lesions, and the
  # 10 single-image mel lesions alone make up the mel targets: exactly 6/2/2. (Were it
  # counted as mel, it would take 5 of mel's 9 train places and leave 4/3/3.)
  labels = np.array([5, 5, 5, 4, 4] + [5] * 10 + [4] * 10)
  groups = np.array(['big'] * 5 + [f'nv{i}' for i in range(10)] + [f'mel{i}' for i in range(10)])
  splits = splits_lib.make_splits(labels, groups)
  assert_partition(splits, len(labels))
  assert sum(np.isin(np.arange(5), indices).all() for indices in splits.values()) == 1
  single_mel = np.arange(15, 25)
  assert [np.isin(single_mel, splits[name]).sum() for name in splits_lib.SPLIT_NAMES] == [6, 2, 2]


def test_random_image_split_is_stratified_and_leaks_lesions():
  labels, groups = lesion_dataset(2000)
  grouped = splits_lib.make_splits(labels, groups)
  per_image = splits_lib.make_splits(labels, groups, method='random_image')
  assert_partition(per_image, len(labels))
  assert any(not np.array_equal(grouped[name], per_image[name]) for name in grouped)
  overall = np.bincount(labels, minlength=NUM_CLASSES) / len(labels)
  for name, fraction in zip(splits_lib.SPLIT_NAMES, (0.6, 0.2, 0.2)):
    assert len(per_image[name]) / len(labels) == pytest.approx(fraction, abs=0.002)
    proportions = np.bincount(labels[per_image[name]], minlength=NUM_CLASSES) / len(per_image[name])
    np.testing.assert_allclose(proportions, overall, atol=0.01)
  report = splits_lib.leak_report(per_image, groups)
  assert report['shared_lesions_total'] > 0
  assert report['test_images_with_lesion_in_train'] > 0.1


@pytest.mark.parametrize('fractions', [(0.6, 0.2), (0.5, 0.5, 0.0), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1),
                                       (0.6, 0.2, float('nan'))])
def test_bad_fractions_are_rejected(fractions):
  labels, groups = lesion_dataset(50)
  with pytest.raises(ValueError, match='fractions must be 3 positive numbers summing to 1'):
    splits_lib.make_splits(labels, groups, fractions=fractions)


def test_unknown_method_lists_the_valid_ones():
  labels, groups = lesion_dataset(50)
  with pytest.raises(ValueError, match="lesion_grouped.*random_image"):
    splits_lib.make_splits(labels, groups, method='by_patient')


def test_mismatched_inputs_are_rejected():
  with pytest.raises(ValueError, match='same length'):
    splits_lib.make_splits([0, 1, 2], ['a', 'b'])


def test_leak_report_counts_shared_lesions():
  groups = np.array(['a', 'a', 'b', 'b', 'c', 'd', 'd', 'e'])
  splits = {'train': np.array([0, 2, 5]), 'val': np.array([1, 6, 4]), 'test': np.array([3, 7])}
  report = splits_lib.leak_report(splits, groups)
  assert report['shared_lesions'] == {'train-val': 2, 'train-test': 1, 'val-test': 0}
  assert report['shared_lesions_total'] == 3
  assert report['test_images_with_lesion_in_train'] == 0.5  # 'b' is in train, 'e' is not.


def test_write_splits_csv(tmp_path):
  metadata = {'image_id': np.array(['i0', 'i1', 'i2']), 'lesion_id': np.array(['l0', 'l0', 'l1']),
              'dx': np.array(['nv', 'nv', 'mel']), 'label': np.array([5, 5, 4])}
  splits = {'train': np.array([0, 1]), 'val': np.array([], dtype=int), 'test': np.array([2])}
  path = tmp_path / 'splits.csv'
  splits_lib.write_splits_csv(path, metadata, splits)
  with open(path, newline='') as f:
    rows = list(csv.reader(f))
  assert rows == [['image_id', 'lesion_id', 'dx', 'split'], ['i0', 'l0', 'nv', 'train'],
                  ['i1', 'l0', 'nv', 'train'], ['i2', 'l1', 'mel', 'test']]
  with pytest.raises(ValueError, match='in no split'):
    splits_lib.write_splits_csv(path, metadata, {'train': np.array([0, 1])})
  with pytest.raises(ValueError, match='disjoint'):
    splits_lib.write_splits_csv(path, metadata, {'train': np.array([0, 1]), 'test': np.array([1, 2])})


def test_check_every_class_present_names_split_and_classes():
  labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
  complete = {'train': np.array([0, 1, 2]), 'val': np.array([3, 4, 5]), 'test': np.array([6, 7, 8])}
  splits_lib.check_every_class_present(complete, labels, num_classes=3)
  lacking = {'train': np.array([0, 1, 2, 8]), 'val': np.array([3, 4, 5]), 'test': np.array([6, 7])}
  with pytest.raises(ValueError, match=r"split 'test' \(2 images\) has no images of class 2 \(bkl\)"):
    splits_lib.check_every_class_present(lacking, labels, num_classes=3, class_names=CLASS_NAMES)
  with pytest.raises(ValueError, match=r"'train'.*3, 4, 5, 6"):
    splits_lib.check_every_class_present(complete, labels, num_classes=NUM_CLASSES)


def test_trainer_refuses_a_split_that_lacks_a_class():
  # Prepare only warns (the fractions are the trainer's choice); the trainer must stop, as
  # per-class recall and balanced accuracy are undefined on a split without some class.
  config = ml_collections.ConfigDict({'data': {
      'split': 'lesion_grouped', 'split_fractions': (0.6, 0.2, 0.2), 'split_seed': 0}})
  labels, groups = lesion_dataset(60)
  groups[labels == 3] = 'one_df_lesion'  # Every df image belongs to one lesion: one split gets it.
  with pytest.raises(ValueError, match=r"split '(val|test)' \(\d+ images\) has no images of class 3.*"
                                       r'too small for these split fractions'):
    handle.split_indices({'label': labels, 'group': groups}, datasets.HAM10000,
                         method=config.data.split, fractions=config.data.split_fractions,
                         seed=config.data.split_seed)


# ---------------------------------------------------------------------------------------
# Properties over random lesion tables and fractions.

lesion_tables = st.lists(
    st.tuples(st.integers(0, NUM_CLASSES - 1), st.integers(1, 5)),  # (label, number of images)
    min_size=1, max_size=150)
fraction_triples = st.tuples(*[st.integers(1, 20)] * 3).map(lambda w: tuple(x / sum(w) for x in w))


def table_to_arrays(table):
  labels = np.repeat([label for label, _ in table], [size for _, size in table])
  groups = np.repeat([f'L{i}' for i in range(len(table))], [size for _, size in table])
  return labels, groups


def split_number_per_image(splits, num_images: int) -> np.ndarray:
  """Image index -> the position of its split in `splits` (train 0, val 1, test 2)."""
  split_of_image = np.empty(num_images, dtype=int)
  for i, indices in enumerate(splits.values()):
    split_of_image[indices] = i
  return split_of_image


@settings(max_examples=150, deadline=None)
@given(table=lesion_tables, fractions=fraction_triples, seed=st.integers(0, 2**31))
def test_grouped_split_properties(table, fractions, seed):
  labels, groups = table_to_arrays(table)
  splits = splits_lib.make_splits(labels, groups, fractions=fractions, seed=seed)
  assert_partition(splits, len(labels))
  assert splits_lib.leak_report(splits, groups)['shared_lesions_total'] == 0

  # Stratification: each split holds its fraction of each class, give or take the class's
  # largest lesion (every lesion here has one label, so lesion class = image class).
  split_of_image = split_number_per_image(splits, len(labels))
  for label in np.unique(labels):
    of_class = labels == label
    largest_lesion = max(size for lab, size in table if lab == label)
    for i, fraction in enumerate(fractions):
      assigned = np.sum(split_of_image[of_class] == i)
      assert abs(assigned - fraction * of_class.sum()) <= largest_lesion + 1e-6

  again = splits_lib.make_splits(labels, groups, fractions=fractions, seed=seed)
  for name in splits:
    np.testing.assert_array_equal(splits[name], again[name])


# Lesions whose images do not all share one label (a few in HAM10000 do not).
mixed_lesion_tables = st.lists(st.lists(st.integers(0, NUM_CLASSES - 1), min_size=1, max_size=5),
                               min_size=1, max_size=100)


@settings(max_examples=100, deadline=None)
@given(table=mixed_lesion_tables, fractions=fraction_triples, seed=st.integers(0, 2**31),
       order_seed=st.integers(0, 2**31))
def test_grouped_split_properties_with_mixed_label_lesions(table, fractions, seed, order_seed):
  order = np.random.default_rng(order_seed).permutation(sum(map(len, table)))  # Images in any order.
  labels = np.concatenate(table)[order]
  groups = np.repeat([f'L{i}' for i in range(len(table))], [len(images) for images in table])[order]
  splits = splits_lib.make_splits(labels, groups, fractions=fractions, seed=seed)
  assert_partition(splits, len(labels))
  assert splits_lib.leak_report(splits, groups)['shared_lesions_total'] == 0

  # A lesion is stratified by its majority label (ties: the lower one), so the images of the
  # lesions of one majority label are split by the fractions within their largest lesion.
  split_of_image = split_number_per_image(splits, len(labels))
  majority = {f'L{i}': np.bincount(images).argmax() for i, images in enumerate(table)}
  majority_of_image = np.array([majority[group] for group in groups])
  for label in set(majority.values()):
    of_label = majority_of_image == label
    largest_lesion = max(len(images) for i, images in enumerate(table) if majority[f'L{i}'] == label)
    for i, fraction in enumerate(fractions):
      assert abs(np.sum(split_of_image[of_label] == i) - fraction * of_label.sum()) <= largest_lesion + 1e-6

  again = splits_lib.make_splits(labels, groups, fractions=fractions, seed=seed)
  for name in splits:
    np.testing.assert_array_equal(splits[name], again[name])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_random_image_split_differs_from_grouped(seed):
  labels, groups = lesion_dataset(300, seed=seed % 1000)
  grouped = splits_lib.make_splits(labels, groups, seed=seed)
  per_image = splits_lib.make_splits(labels, groups, seed=seed, method='random_image')
  assert_partition(per_image, len(labels))
  assert any(not np.array_equal(grouped[name], per_image[name]) for name in grouped)
  again = splits_lib.make_splits(labels, groups, seed=seed, method='random_image')
  for name in per_image:  # Deterministic for a seed, like the grouped split.
    np.testing.assert_array_equal(per_image[name], again[name])
