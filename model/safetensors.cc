// placeholder: implemented by the foundation issue
