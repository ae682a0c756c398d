# frozen_string_literal: true

# Serves the page's JavaScript modules from node_modules (an import map names them):
# only .js files of the packages listed, nothing above them.
class VendorController < ActionController::Base
  PACKAGES = %w[@anycable/web @anycable/core nanoevents @hotwired/turbo].freeze

  # Script files, not JSONP endpoints: nothing secret is in them (Rails refuses a GET
  # answered with JavaScript as a cross-origin request otherwise).
  skip_forgery_protection

  def show
    file = module_file(params[:path].to_s)
    return head(:not_found) unless file

    expires_in 1.hour, public: true
    send_file file, type: "text/javascript", disposition: "inline"
  end

  private

  # The file, resolved (symlinks and `..` too), if it is a .js file of a listed package.
  def module_file(path)
    root = Rails.root.join("node_modules").realpath
    file = Rails.root.join("node_modules", path).realpath
    file if file.extname == ".js" && file.file? && PACKAGES.any? { |pkg| file.to_s.start_with?("#{root}/#{pkg}/") }
  rescue ArgumentError, SystemCallError # a NUL byte, a missing file
    nil
  end
end
