// placeholder: implemented by the parameter-server issue
