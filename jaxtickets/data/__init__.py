"""Images for the runs: decoding (`images`), where they come from (`sources`), the training stream and the held-out
pairs (`pipeline`). The names the rest of the package uses are here."""

from jaxtickets.data.images import BadImage, load_image, preprocess_eval, preprocess_train
from jaxtickets.data.pipeline import eval_pairs, make_train_dataset, make_train_iterator, split_holdout
from jaxtickets.data.sources import (DEMO_IMAGES, IMAGE_EXTENSIONS, ImageSource, SkipLog, check_listings_agree,
                                     demo_images, first_listing_difference, list_images, open_source)

__all__ = ["BadImage", "load_image", "preprocess_eval", "preprocess_train", "eval_pairs", "make_train_dataset",
           "make_train_iterator", "split_holdout", "DEMO_IMAGES", "IMAGE_EXTENSIONS", "ImageSource", "SkipLog",
           "check_listings_agree", "demo_images", "first_listing_difference", "list_images", "open_source"]
