"""The error types a front end shows to the user.

Every problem with what the user gave us (an image, a folder, a model bundle) raises one of these
with a message that says what is wrong and what to do, never a bare numpy/ITK/torch traceback.
"""


class InputError(ValueError):
    """Bad user input: unreadable file, wrong dimensionality, NaN voxels, empty image, ..."""


class BundleError(InputError):
    """A model bundle that is missing files, corrupt, or of an unsupported format version."""
