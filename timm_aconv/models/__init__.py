""" timm registrations (importing this module registers the models with timm) """
